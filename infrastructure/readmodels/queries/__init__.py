"""One query object per read model (ledger, payments, instances, users, usage sessions): the
only SQL the doors reach."""
