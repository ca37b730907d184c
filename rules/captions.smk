# rules for the captions stage (see docs/ARCHITECTURE.md)
