"""Modal screens: confirmations, guidance editing, freezing, mechanism approval, help, seek."""
