"""Analysis on top of the record: the report, statistics, plots, the event formatter."""
