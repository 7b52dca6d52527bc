"""neighbor-lt."""
