"""The admin app's routers: auth, the JSON API, actions, pages and metrics."""
