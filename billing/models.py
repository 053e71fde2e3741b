"""Models arrive with their issue; the app exists so the layout and contracts are in place."""
