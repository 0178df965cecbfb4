#!/usr/bin/env python3
"""The Rust functions of src/ longer than a limit (issue 30 asks for none over ~100 lines).

    python3 scripts/function_lengths.py [LIMIT]     (default 100)

A function runs from its `fn` line to the closing brace at the same indentation; a file's test
module (`#[cfg(test)]` followed by `mod`) is left out. Prints `lines file line name`, longest
first.
"""
import os, re, sys

out=[]
for root,_,files in os.walk('src'):
    for f in files:
        if not f.endswith('.rs'): continue
        p=os.path.join(root,f)
        lines=open(p).read().split('\n')
        cut=len(lines)
        for i,l in enumerate(lines):
            if l.strip()=='#[cfg(test)]' and i+1<len(lines) and lines[i+1].lstrip().startswith('mod '):
                cut=i;break
        i=0
        while i<cut:
            m=re.match(r'^(\s*)(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)',lines[i])
            if m and not lines[i].rstrip().endswith(';'):
                ind=m.group(1)
                j=i
                while j<cut and not (lines[j].startswith(ind+'}') and len(lines[j].rstrip())==len(ind)+1):
                    j+=1
                out.append((j-i+1,p,i+1,m.group(7)))
            i+=1
out.sort(reverse=True)
lim=int(sys.argv[1]) if len(sys.argv)>1 else 100
try:
    for n, p, l, name in out:
        if n > lim:
            print(n, p, l, name)
except BrokenPipeError:
    pass
