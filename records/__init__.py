"""Sources to de-identified MEDS events, and the embedded demo network."""
