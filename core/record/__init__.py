"""The record: the one vocabulary (events, commands, config), the session folder, the fold events -> state. Imports nothing else of the project."""
