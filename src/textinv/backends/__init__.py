"""Training backends: what owns the frozen forward, the loss and the update of the new rows (DESIGN.md, "Seams")."""
