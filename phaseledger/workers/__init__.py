"""Worker processes that claim due runs from the run index and drive them."""
