"""② Storage: instance files under the storage root, written atomically, and their index rows."""
