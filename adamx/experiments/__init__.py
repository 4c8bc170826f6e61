"""Experiments that reproduce papers with adamx (they need the ``examples`` extra)."""
