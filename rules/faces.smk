# rules for the faces stage (see docs/ARCHITECTURE.md)
