"""The node's side of Livepeer's orchestrator protocols.

``byoc`` registers each served capability with an orchestrator's BYOC endpoint and keeps it
registered; ``live_runner`` registers the node as go-livepeer live runners and keeps their
heartbeats; ``orchestrator`` holds the calls both share (the POST, the backoff, the calls in flight
awaited before unregistering); ``trickle`` reads and writes Livepeer's trickle channels for live
streams (``vision_node.streams``). Nothing here is on the ``/infer`` path: the
node serves the same frames whether or not an orchestrator is in front of it.
"""
