# rules for the train stage (see docs/ARCHITECTURE.md)
