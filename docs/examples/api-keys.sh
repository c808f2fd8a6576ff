# A key for team-a that may ask only for the auto model; the key is printed once, the file keeps its sha256.
loraroute keys add keys.yaml --name team-a --model MoM
# A key for every model, given on stdin (e.g. one a secret manager holds).
echo "sk-ops-0123456789abcdef" | loraroute keys add keys.yaml --name ops --stdin
