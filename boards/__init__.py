"""Board definitions (TOML): chip, flash layout, pins, attached sensors and buses."""
