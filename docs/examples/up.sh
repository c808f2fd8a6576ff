make model          # once: builds models/loraroute-domain
loraroute up        # or: make run
