"""The ground floor: settings and process helpers. Imports nothing of the project's."""
