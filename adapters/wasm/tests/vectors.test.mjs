// The shared vectors, checked through the real wasm module in Node.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const larder = require('../pkg/larder_wasm.js');
const vectors = (name) => readFileSync(new URL(`../../../core/vectors/${name}`, import.meta.url), 'utf8')
  .split('\n').filter((l) => l && !l.startsWith('#'));

test('ring vectors: same owner as native', () => {
  const lines = vectors('ring.txt');
  assert.ok(lines.length >= 100);
  for (const line of lines) {
    const [scheme, peers, key, owner] = line.split('|');
    assert.equal(larder.ownerOfKey(peers.split(','), key, scheme), owner, line);
  }
});

const flat = (s) => (s === '-' ? [] : s.split(';').flatMap((kv) => {
  const i = kv.indexOf('=');
  return [kv.slice(0, i).trim(), kv.slice(i + 1).trim()];
}));

test('policy vectors: same decisions as native', () => {
  const T0 = 1_700_000_000_000;
  const lines = vectors('policy.txt');
  assert.ok(lines.length >= 25);
  for (const line of lines) {
    const [name, method, url, req, status, res, storage, later, reqThen, reuse] = line.split('|');
    const headers = ['date', new Date(T0).toUTCString(), ...flat(res)];
    const d = larder.decide(method, url, flat(req), Number(status), headers, T0, false);
    assert.equal(d.storable ? 'stored' : d.reason, storage, name);
    const thenMethod = name === 'head-from-get' ? 'HEAD' : 'GET';
    const got = d.storable ? d.reuse(thenMethod, url, flat(reqThen), T0 + Number(later) * 1000) : '-';
    assert.equal(got, reuse, name);
  }
});

test('cache keys are normalized', () => {
  assert.equal(larder.cacheKey('HTTP://Example.TEST:80/a?b=1'), 'http://example.test/a?b=1');
  assert.throws(() => larder.cacheKey('/relative'));
});

test('preference lists every peer once, owner first', () => {
  const peers = ['http://a:1', 'http://b:1', 'http://c:1'];
  const p = larder.preference(peers, 'http://o.test/x', 'hrw');
  assert.equal(p.length, 3);
  assert.equal(p[0], larder.owner(peers, 'http://o.test/x', 'hrw'));
});

test('lru evicts least recently used by bytes and refuses oversize items', () => {
  const lru = new larder.Lru(100, 60);
  assert.deepEqual(lru.admit('a', 40), []);
  assert.deepEqual(lru.admit('b', 40), []);
  assert.ok(lru.touch('a'));
  assert.deepEqual(lru.admit('c', 40), ['b']);
  assert.equal(lru.weight, 80);
  assert.throws(() => lru.admit('big', 61), /exceeds/);
  assert.equal(lru.size, 2);
});

test('ttl and age follow the caller clock', () => {
  const T0 = 1_700_000_000_000;
  const d = larder.decide('GET', 'http://o.test/a', [], 200, ['date', new Date(T0).toUTCString(), 'cache-control', 'max-age=60'], T0, false);
  assert.equal(d.ttl(T0 + 20_000), 40);
  assert.equal(d.age(T0 + 20_000), 20);
});
