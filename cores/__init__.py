"""The machinery of the drink machine: everything below the entry scripts."""
