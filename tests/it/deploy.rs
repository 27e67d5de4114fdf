//! Deploy files (placeholder)
