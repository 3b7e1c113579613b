"""Privacy mechanisms: each wraps what leaves a site or how a site trains, for any protocol."""
