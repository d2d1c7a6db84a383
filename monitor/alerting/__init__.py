"""seekwatch part: see README and docs/."""
