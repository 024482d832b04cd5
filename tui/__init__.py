"""The bilevel terminal app (Textual): every pane a view of the engine's event stream. Only the app imports Textual."""
