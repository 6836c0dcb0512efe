"""What the office template engines (DOCX, ODT, XLSX) share: safe zip and XML reading, and the
office-template core (a library for engines, no hooks)."""
