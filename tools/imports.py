"""Lists, per module of src/, the crate modules it imports (`use crate::`,
`use super::`, and a mod.rs's `use child::`), outside test modules, and any
import cycle. Run from the project root: python3 tools/imports.py"""
import re,glob,sys
mods={}
for f in sorted(glob.glob('src/**/*.rs',recursive=True)):
    m=f[4:-3].replace('/mod','').replace('/','::')
    s=open(f).read().split('#[cfg(test)]')[0]
    deps=set(re.findall(r'crate::([a-z_]+(?:::[a-z_]+)?)',s))
    parent=m.rsplit('::',1)[0] if '::' in m else ''
    for body in re.findall(r'super::\{([^}]*)\}',s):
        for it in body.replace('\n',' ').split(','):
            it=it.strip().split('::')[0]
            if it and it[0].islower() and it!='self': deps.add((parent+'::' if parent else '')+it)
            elif it: deps.add(parent or 'lib')
    for u in re.findall(r'super::([a-z_]+)',s):
        deps.add((parent+'::' if parent else '')+u)
    # use crate::x::{a, b} where a,b are submodules
    for base,body in re.findall(r'crate::([a-z_]+)::\{([^}]*)\}',s):
        for it in body.replace('\n',' ').split(','):
            it=it.strip().split('::')[0]
            if it and it[0].islower() and it!='self': deps.add(base+'::'+it)
    if f.endswith('mod.rs') or f.endswith('lib.rs'):
        for u in re.findall(r'^(?:pub )?use ([a-z_]+)::', s, re.M):
            if u not in ('std','crate','super','self') and (m+'::'+u) in [x[4:-3].replace('/mod','').replace('/','::') for x in glob.glob('src/**/*.rs',recursive=True)]:
                deps.add(m+'::'+u)
    mods[m]=deps
names=set(mods)
def norm(d):
    if d in names: return d
    top=d.split('::')[0]
    return top if top in names else None
graph={m:sorted({norm(d) for d in ds if norm(d) and norm(d)!=m}) for m,ds in mods.items()}
for m in sorted(graph): print(f"{m:22} -> {', '.join(graph[m])}")
# detect cycles (SCC)
idx={};low={};st=[];on=set();sccs=[];i=[0]
def sc(v):
    idx[v]=low[v]=i[0];i[0]+=1;st.append(v);on.add(v)
    for w in graph.get(v,[]):
        if w not in idx: sc(w);low[v]=min(low[v],low[w])
        elif w in on: low[v]=min(low[v],idx[w])
    if low[v]==idx[v]:
        comp=[]
        while True:
            w=st.pop();on.discard(w);comp.append(w)
            if w==v:break
        if len(comp)>1: sccs.append(comp)
sys.setrecursionlimit(10000)
for v in graph:
    if v not in idx: sc(v)
print("cycles:", sccs or "none")
