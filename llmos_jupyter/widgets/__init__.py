"""Live views (ipywidgets) with static HTML fallbacks; each module imports its heavy parts lazily."""
