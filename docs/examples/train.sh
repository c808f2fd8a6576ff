loraroute model train --threads 1 --mask-missing-labels --out runs/m        # run M (about 60 min)
loraroute model train --threads 1 --epochs 4 --max-per-class 800 --mask-missing-labels --out runs/mb  # run MB (about 90 min)
loraroute model average runs/m runs/mb      # the shipped mmlu-pro head (and the domain head before): their average and its memory, in place
loraroute model train --threads 2 --head domain --mask-missing-labels  # the shipped domain head, with the conversational file (about 55 min)
loraroute model train --split subject --threads 2 --head domain --mask-missing-labels --out runs/sdc  # ... on unseen subjects (about 15 min on a quiet machine)
loraroute model train --threads 2 --head domain --mask-missing-labels --epochs 2 --out runs/d2  # the shipped domain head's recipe, 2 epochs: not adopted
loraroute model train --threads 2 --head domain --mask-missing-labels --crop-prob 0.3 --out runs/dc  # ... with sentence crops: not adopted
loraroute model train --threads 2 --head domain --mask-missing-labels --out runs/d0  # the shipped domain head's run, in a folder of its own
loraroute model train --threads 2 --head domain --mask-missing-labels --run-seed 1 --out runs/d1  # ... run seed 1: not adopted
loraroute model average runs/d0 runs/d1 --out runs/d0d1                   # their average: not adopted
loraroute model train --threads 1 --out runs/a                             # run A (about 70 min)
loraroute model train --threads 1 --epochs 4 --max-per-class 800 --out runs/b  # run B (about 65 min)
loraroute model average runs/a runs/b --out runs/ab                        # the heads shipped before
loraroute model memory --weights runs/ab    # recompute their memory (or add one after --no-memory)
loraroute model train --no-lora --out "$(mktemp -d)"                                # linear probe, balanced + typo copy
loraroute model train --no-lora --no-balance --typo-copies 0 --out "$(mktemp -d)"   # plain linear probe
loraroute model train --aux-subject 0 --out "$(mktemp -d)"                          # LoRA without the auxiliary loss
loraroute model train --split subject --aux-subject 0 --out "$(mktemp -d)"          # subject held-out
loraroute model train --threads 1 --epochs 4 --out runs/d                         # a fourth epoch
loraroute model train --epochs 4 --max-per-class 800 --typo-prob 0.8 --out runs/c   # run C, not kept
loraroute model train --threads 1 --epochs 4 --max-per-class 800 --run-seed 1 --out runs/f  # run F
loraroute model train --threads 1 --run-seed 2 --out runs/g                # run G
loraroute model train --threads 1 --epochs 4 --max-per-class 800 --run-seed 2 --out runs/h  # run H
loraroute model average runs/a runs/d runs/f runs/h runs/g --out runs/soup  # the greedy soup, not kept
loraroute model train --threads 1 --epochs 4 --max-per-class 800 --consistency 1 --out runs/i  # run I
loraroute model train --threads 1 --consistency 1 --out runs/j              # run J
loraroute model average runs/i runs/j --out runs/ij                         # not kept
loraroute model train --threads 1 --mask-missing-labels --run-seed 2 --out runs/m2  # run M2
loraroute model train --threads 1 --epochs 4 --max-per-class 800 --mask-missing-labels --run-seed 2 --out runs/mh  # run MH
loraroute model average runs/m2 runs/mh --out runs/m2mh                     # not kept
loraroute model average runs/g runs/h --out runs/gh                         # not kept
loraroute model train --split subject --threads 1 --mask-missing-labels --out runs/sm  # subject held-out, run M's recipe
loraroute model train --split subject --threads 1 --epochs 4 --max-per-class 800 --mask-missing-labels --out runs/smb  # ... run MB's
loraroute model average runs/sm runs/smb --out runs/smsmb                   # the shipped recipe on unseen subjects
loraroute model train --threads 1 --mask-missing-labels --crop-prob 0.3 --out runs/mc  # run MC: run M + sentence crops
loraroute model train --threads 1 --epochs 4 --max-per-class 800 --mask-missing-labels --crop-prob 0.3 --out runs/mbc  # run MBC
loraroute model average runs/mc runs/mbc --out runs/mcmbc                   # not adopted
loraroute model train --threads 1 --mask-missing-labels --probe-init --out runs/p  # run P: run M + probe init
loraroute model train --split subject --threads 1 --mask-missing-labels --probe-init --out runs/sp  # ... on unseen subjects
loraroute model train --threads 2 --mask-missing-labels --epochs 2 --out runs/m2e  # run M's recipe, 2 epochs
loraroute model train --split subject --threads 2 --mask-missing-labels --epochs 2 --out runs/sm2e  # ... on unseen subjects
loraroute model train --split subject --threads 1 --epochs 2 --max-per-class 800 --mask-missing-labels --out runs/smb2e  # run MB's recipe, 2 epochs, unseen subjects
loraroute model average runs/sm2e runs/smb2e --out runs/sm2esmb2e          # not adopted
loraroute model train --threads 1 --mask-missing-labels --epochs 2 --run-seed 2 --out runs/m2e2  # run M's recipe, 2 epochs, seed 2
loraroute model train --split subject --threads 1 --mask-missing-labels --epochs 2 --run-seed 2 --out runs/sm2e2  # ... on unseen subjects
loraroute model average runs/m2e runs/m2e2 --out runs/m2em2e2               # not adopted
loraroute model average runs/sm2e runs/sm2e2 --out runs/sm2esm2e2           # ... on unseen subjects
python loadtest/accuracy_table.py shipped=modelkit/weights  # a table row from meta.json
