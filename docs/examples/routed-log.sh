loraroute up 2>&1 | grep '"event": *"routed"'
