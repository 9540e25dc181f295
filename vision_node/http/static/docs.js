// Swagger UI (the swagger-ui-bundle package's assets, served by the node: no CDN) on /openapi.json.
"use strict";
window.addEventListener("load", () => {
  window.SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true });
});
