# rules for the evaluate stage (see docs/ARCHITECTURE.md)
