"""The web UI: a single-page app shipped inside the package, served by `UserInterface`."""

from angosd.ui.resource import STATIC_PREFIX, Asset, UserInterface, load_assets

__all__ = ["STATIC_PREFIX", "Asset", "UserInterface", "load_assets"]
