"""The web dashboard a node serves at `/ui` on its HTTP listener: services and their instances,
cluster members, a key browser, configuration and its history, kept live by a watch.

Owns the static page (`static/`, plain HTML, JS and CSS shipped in the package: no build step),
the JSON views it reads (`views`, over the `RegistryClient` protocol only) and the aiohttp routes
(`routes.add_dashboard_routes`). The node process mounts it beside the JSON gateway, with the
same auth.
"""

from raftreg.dashboard.routes import add_dashboard_routes

__all__ = ["add_dashboard_routes"]
