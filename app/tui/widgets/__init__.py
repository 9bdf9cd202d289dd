"""Small widgets shared by the screens, one per module."""
