"""SeqIO task definitions that live outside the package (registered on import, e.g. tasks.demo)."""
