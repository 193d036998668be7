"""The I/O-free core: the task model, its allowed moves, the priority queue, placement, the
capacity ledgers and locks, and retry back-off. No sockets, files, terminals or sleeps, and
importing it imports none of the edges (store, RPC, shell, HTTP): unit tests drive it
directly, and the master (master/) applies it under one lock and journals what it changed."""
