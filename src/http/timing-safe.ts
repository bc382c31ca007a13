/**
 * Compares a presented secret with the expected one in time that depends only on the expected
 * one's length, so a caller cannot learn it a character at a time.
 */
export function timingSafeEqual(presented: string, expected: string): boolean {
  let difference = presented.length ^ expected.length;
  for (let index = 0; index < expected.length; index++) difference |= (presented.charCodeAt(index) || 0) ^ expected.charCodeAt(index);
  return difference === 0;
}
