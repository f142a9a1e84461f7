"""Sources of geotagged photos -> validated records, with a reason for everything skipped."""
