"""The app's panes and small widgets; each pane syncs itself from the view model."""
