// The demo catalogue and users. Ids are fixed, so seeding again changes nothing: the
// inventory API treats a known productId as already added.
import crypto from 'node:crypto';
import { demoIdentities } from '../system/identities.ts';
import type { System } from '../system/system.ts';

const names = [
  'Espresso beans 1 kg',
  'Pour-over kettle',
  'Ceramic dripper',
  'Paper filters (100)',
  'Burr grinder',
  'Milk frother',
  'Travel mug',
  'Cold brew jar',
  'Digital scale',
  'Tamper 58 mm',
  'Knock box',
  'Cleaning tablets',
  'Barista apron',
  'Latte art pitcher',
  'Decaf beans 500 g',
  'Tea sampler',
  'Chai concentrate',
  'Oat milk (6)',
  'Stroopwafels',
  'Dark chocolate',
  'Limited roast: Gesha',
  'Vintage grinder',
  'Signed brewing guide',
];

export const demoUsers: Record<string, number> = { alice: 10_000_000, bob: 10_000_000, carol: 10_000_000, dave: 500 };

export function demoProductId(index: number): string {
  const hex = crypto.createHash('sha1').update(`converge-demo-product-${index}`).digest('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-4${hex.slice(13, 16)}-a${hex.slice(17, 20)}-${hex.slice(20, 32)}`;
}

export const demoCatalogue = names.map((name, index) => ({
  productId: demoProductId(index),
  name,
  price: 250 + ((index * 7919) % 40) * 100,
  currency: 'EUR',
  // The last three are scarce, to show out-of-stock outcomes.
  stockQuantity: index >= names.length - 3 ? 3 : 1000,
}));

export async function seedDemo(system: System): Promise<void> {
  const authorization = `Bearer ${await system.identities.token(demoIdentities.merchant)}`;
  for (const product of demoCatalogue) {
    const response = await system.services.inventory.app.inject({
      method: 'POST',
      url: '/products',
      headers: { authorization },
      payload: product,
    });
    if (response.statusCode >= 300) throw new Error(`seeding ${product.name} failed: ${response.body}`);
  }
  for (const [userId, credit] of Object.entries(demoUsers)) {
    if ((await system.provider.credit(userId)) === undefined) await system.provider.deposit(userId, credit);
  }
}
