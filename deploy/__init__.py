"""Ways to run Nudge: ``deploy/local`` starts everything on one machine without Docker."""
