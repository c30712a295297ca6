"""A one-table app for the "one plain ORM write per task" benchmark variant."""
