"""What every protocol of the API shares; nothing here knows any protocol's wire format."""
