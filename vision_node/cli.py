"""``vision-node`` (or ``python -m vision_node``): run the node.

Every ``serve`` flag is generated from ``Config``, so the flags, the ``VISION_NODE_*``
environment variables and the defaults can never drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import os
import sys
import threading
import time
from pathlib import Path

from .config import ENV_PREFIX, Config
from .errors import StartupError

log = logging.getLogger("vision_node")

EXIT_CONFIG = 2  # the configuration or the artefacts are wrong: a restart cannot cure it
EXIT_RESTART = 1  # a failure at run time (or a port still held): a supervisor's restart may


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vision-node",
        description="Vision node: depth, segmentation and pose conditioning maps per frame over HTTP.",
        allow_abbrev=False,  # --engine is not --engines: a flag is spelled out or refused
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="serve the engines built by vision-node-build",
        description="Serve the graphs in an engines directory. Every flag can also be set with the environment "
        f"variable {ENV_PREFIX}<FLAG> (e.g. {ENV_PREFIX}PORT=8000); a flag wins over the variable.",
    )
    _config_flags(serve)
    runners = commands.add_parser(
        "live-runners",
        help="print the runners.json entries that register this node's capabilities as Livepeer live runners",
        description="Print go-livepeer's static live-runner configuration for this node: give it to the orchestrator "
        "with -liveRunnerConfig FILE or POST it to /registerLiveRunners on its CLI port. Takes the same settings as "
        "serve (flags or VISION_NODE_* variables): --node-url (required), --capabilities (default: those in the "
        "manifest of --engines), --runner-apps, --runner-mode, --capacity, --runner-price, --runner-price-unit, "
        "--runner-version, --runner-metadata, --gpu-name, --gpu-vram-mb.",
    )
    _config_flags(runners)
    selftest = commands.add_parser(
        "selftest",
        help="check every TensorRT (or TensorRT for RTX) engine against ONNX Runtime on this GPU; GPU time and VRAM",
        description="Run the sample frames through each TensorRT engine and through ONNX Runtime (fp32), print the "
        "agreement table, GPU time per frame and the VRAM the node holds. Exit 1 on disagreement, 2 without "
        "TensorRT or a GPU.",
    )
    for command in commands.choices.values():
        command.allow_abbrev = False
    selftest.add_argument("--engines", type=Path, default=Path("engines"), help="engines directory (default: engines)")
    selftest.add_argument("--capabilities", default="", help="comma-separated subset (default: all)")
    selftest.add_argument("--iterations", type=int, default=200, help="timed frames per engine (default: 200)")
    selftest.add_argument(
        "--backend",
        choices=("tensorrt", "tensorrt-rtx"),
        default="tensorrt",
        help="which engines to check: tensorrt (built on this GPU) or tensorrt-rtx (ahead of time, for RTX cards; "
        "the first run compiles kernels for this card) (default: tensorrt)",
    )
    return parser


def _config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per ``Config`` field, each also a ``VISION_NODE_*`` variable."""
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata['help']} [env {ENV_PREFIX}{f.name.upper()}]"
        if isinstance(f.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            default = ",".join(f.default) if isinstance(f.default, tuple) else f.default
            shown = f" (default: {default})" if default not in ("", None) else ""  # the help says what empty means
            parser.add_argument(
                flag,
                default=None,
                metavar=f.name.upper(),
                choices=f.metadata.get("choices"),
                help=help_text + shown,
            )


def print_live_runners(config: Config) -> int:
    """``vision-node live-runners``: runners.json on stdout, or a one-line reason on stderr (exit 2)."""
    import json

    from . import device_memory, manifest
    from .contract import CAPABILITIES
    from .livepeer.live_runner import static_runners

    if not config.node_url:
        print(
            "vision-node live-runners: --node-url is required (where the orchestrator reaches this node)",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    capabilities = list(config.capabilities)
    if not capabilities:
        try:
            listed = manifest.read(config.engines, only=()).listed
        except (OSError, ValueError) as err:
            print(
                f"vision-node live-runners: no --capabilities and no manifest to read them from ({err})",
                file=sys.stderr,
            )
            return EXIT_CONFIG
        capabilities = [c for c in CAPABILITIES if c in listed]
    try:  # what the engines need on a GPU, where the manifest has the builder's figures
        built = manifest.read(config.engines, only=capabilities).capabilities
        memory = device_memory.of({c: [g.memory.as_dict() for g in e.graphs] for c, e in built.items()}).told()
    except (OSError, ValueError):
        memory = ""
    print(json.dumps(static_runners(config, [*capabilities, *config.combinations], memory), indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "selftest":
        from .serving import selftest

        logging.basicConfig(level="WARNING", format="%(levelname)s %(name)s: %(message)s")
        capabilities = [c for c in args.capabilities.split(",") if c]
        return selftest.run(args.engines, capabilities, args.iterations, args.backend)
    overrides = {k: v for k, v in vars(args).items() if k != "command" and v is not None}
    try:
        config = Config.load(os.environ, **overrides)
    except StartupError as err:
        print(f"vision-node {args.command}: {err}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "live-runners":
        return print_live_runners(config)
    return serve(config)


FATAL_EXIT_S = 4.0  # a broken device can block a clean exit; the supervisor wants us gone within 5 s


def serve(config: Config, open_backend=None) -> int:
    """Run the node until SIGTERM/SIGINT (drain, exit 0) or a fatal fault (exit 1); refuse to start with
    a one-line reason, exit 2, when the configuration or the artefacts are wrong."""
    import uvicorn  # keeps --help fast

    from .http.app import create_app
    from .http.server import DrainingServer, GuardedHttpToolsProtocol
    from .serving import preflight

    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        served, gpu = preflight.check(config, default_backends=open_backend is None)
    except StartupError as err:
        log.error("cannot start: %s", err)
        return EXIT_CONFIG
    try:
        sock = preflight.bind(config.host, config.port)
    except OSError as err:
        log.error("cannot start: %s", err)
        return EXIT_RESTART
    log.info("vision node: serving %s on http://%s:%d", config.engines, config.host, config.port)
    app = create_app(config, open_backend, served=served, gpu=gpu)
    node = app.state.node
    server = DrainingServer(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            # uvicorn types ``http`` as a protocol class; it only calls it, so a factory of one does (uvicorn.config)
            http=functools.partial(GuardedHttpToolsProtocol, node=node),  # type: ignore[arg-type]
            lifespan="on",  # a failed start-up stops the process
            log_config=None,  # uvicorn's loggers go to the root handler above
            access_log=config.access_log,
            server_header=False,
            # uvicorn types this int; it goes to asyncio.timeout(), which takes fractions of a second too
            timeout_graceful_shutdown=config.shutdown_grace_s,  # type: ignore[arg-type]
        ),
        node,
    )

    def stop_for_restart() -> None:  # any thread
        log.error("the node cannot go on: exiting with status 1 so that its supervisor restarts it")
        server.should_exit = True
        threading.Thread(target=_exit_soon, name="fatal-exit", daemon=True).start()

    node.on_fatal = stop_for_restart
    try:
        server.run(sockets=[sock])
    except SystemExit:  # uvicorn's own exit (status 3) when the lifespan's start-up failed: logged above
        pass
    if not server.started or node.error:
        log.error("stopped: %s", node.error or "the node did not start (see the error above)")
        if node.error and node.warm:  # a worker thread may be stuck in the device: do not wait to join it
            logging.shutdown()
            os._exit(EXIT_RESTART)
        return EXIT_RESTART
    log.info("stopped after draining")
    return 0


def _exit_soon() -> None:
    time.sleep(FATAL_EXIT_S)
    log.error("still running %.0f s after a fatal fault: exiting now", FATAL_EXIT_S)
    logging.shutdown()
    os._exit(EXIT_RESTART)
