"""One module per paper experiment that is more than a model: its grid, its rules and its
table's layout (Table A3: ``table_a3``)."""
