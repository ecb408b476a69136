"""Local fake marketplace servers that follow the real provider APIs, errors included."""
