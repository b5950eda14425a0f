// Starts GraphiQL on /graphql with the assets served beside this file (no CDN, no inline
// script: the page's Content-Security-Policy allows scripts from the server only).
(function () {
  "use strict";

  var endpoint = window.location.href.split(/[?#]/)[0];
  var socket = new URL(endpoint);
  socket.protocol = socket.protocol === "https:" ? "wss:" : "ws:";

  // Subscriptions authenticate in `connection_init`: take the credentials from the headers
  // typed into GraphiQL's header editor (kept in localStorage by `shouldPersistHeaders`).
  function connectionParams() {
    var params = {};
    try {
      var headers = JSON.parse(window.localStorage.getItem("graphiql:headers") || "{}");
      Object.keys(headers).forEach(function (name) {
        var key = name.toLowerCase();
        if (key === "authorization") params.authorization = headers[name];
        if (key === "x-api-key") params.apiKey = headers[name];
        if (key === "x-workspace-id") params.workspaceId = headers[name];
      });
    } catch (error) {
      // No headers, or not JSON yet while being typed: connect without credentials.
    }
    return params;
  }

  var fetcher = GraphiQL.createFetcher({
    url: endpoint,
    subscriptionUrl: socket.toString(),
    wsConnectionParams: connectionParams,
  });

  var defaultQuery = [
    "# rag-gql: log in, then send the token as a header (bottom panel):",
    '#   {"Authorization": "Bearer <accessToken>"}',
    "#",
    "# Run with Ctrl-Enter; Ctrl-Space completes.",
    "",
    "query {",
    "  me { id email }",
    "}",
    "",
  ].join("\n");

  ReactDOM.createRoot(document.getElementById("graphiql")).render(
    React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultQuery: defaultQuery,
      defaultEditorToolsVisibility: true,
      isHeadersEditorEnabled: true,
      shouldPersistHeaders: true,
      inputValueDeprecation: true,
    })
  );
})();
