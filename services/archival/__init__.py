"""archival: superseded, rejected and expired versions to cold storage."""
