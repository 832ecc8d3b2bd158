"""pglab: the toolkit of the course (database, manifest, checks, grading, benchmarks)."""

from .servers.database import Database, DatabaseUnavailableError, database_url, locate
from .servers.dsn import BadDsnError, mask_dsn

__all__ = ["BadDsnError", "Database", "DatabaseUnavailableError", "database_url", "locate", "mask_dsn"]
