# rules for the attributes stage (see docs/ARCHITECTURE.md)
