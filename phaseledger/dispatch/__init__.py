"""Dispatchers: drive phaseledger runs from another scheduler (Temporal, DBOS) through ``engine.advance``."""
