import sys
import time

import torch
import torchvision

torch.manual_seed(0)
size, bs = int(sys.argv[1]), int(sys.argv[2])
for amp in (False, True):
    for cl in (False, True):
        m = torchvision.models.resnet18(num_classes=2)
        fmt = torch.channels_last if cl else torch.contiguous_format
        m = m.to(memory_format=fmt)
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
        x = torch.randn(bs, 3, size, size).contiguous(memory_format=fmt)
        y = torch.randint(0, 2, (bs,))
        for i in range(8):
            if i == 2:
                t = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                out = m(x)
            loss = torch.nn.functional.cross_entropy(out.float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"size {size} bs {bs} amp {amp} cl {cl}: {6 * bs / (time.perf_counter() - t):.0f} img/s", flush=True)
